"""Airflow asset (dataset) URIs of the ``pagent://`` scheme."""
