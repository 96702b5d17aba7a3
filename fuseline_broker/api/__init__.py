"""The broker's HTTP API: one flask-smorest blueprint per resource."""
