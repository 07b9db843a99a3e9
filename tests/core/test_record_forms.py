"""The JSON-safe forms of sessions and alerts (written field by field, for speed in recovery images)
keep every field of their dataclass, exactly as ``dataclasses.asdict`` gives it, and load back."""

from __future__ import annotations

from dataclasses import asdict, fields

from service.core.alerts import Alert, AlertBook, _Tracking
from service.core.sessions import Session, SessionTable


def test_sessions_keep_every_field_and_load_back() -> None:
    table = SessionTable()
    table.sessions = {"a": Session("a", 3, next_seq=7, fenced=True, restore_id="snap-1", applied=5),
                      "b": Session("b", 0)}
    form = table.to_dict()
    assert form == [asdict(s) for s in table.sessions.values()]
    assert all(set(d) == {f.name for f in fields(Session)} for d in form)
    assert SessionTable.from_dict(form).sessions == table.sessions


def test_alerts_and_rule_tracking_keep_every_field_and_load_back() -> None:
    alert = Alert("nonfinite", "ERROR", "pipeline/nonfinite_loss", 12, 3.0, "nonfinite", "rank 2 reported 3", 2)
    assert alert.to_dict() == asdict(alert)
    assert set(alert.to_dict()) == {f.name for f in fields(Alert)}
    assert Alert.from_dict(alert.to_dict()) == alert
    book = AlertBook((), [alert], {0: _Tracking(True, 0.25, 4), 3: _Tracking()}, {1})
    form = book.to_dict()
    assert form["tracking"] == {str(i): asdict(t) for i, t in book.tracking.items()}
    assert all(set(t) == {f.name for f in fields(_Tracking)} for t in form["tracking"].values())
    again = AlertBook.from_dict((), form)
    assert (again.fired, again.tracking, again.stalled) == (book.fired, book.tracking, book.stalled)
