"""Airflow-free core of the pagent provider: pure Python, pandas and numpy."""
