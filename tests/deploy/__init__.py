"""Tests of the deployment files: docker/Dockerfile, docker-compose.yml, docker/prometheus.yml."""
