"""The Puzzle service: a REST job API over PostgreSQL (SQLite for a single-user run) and a live dashboard.

Layout follows the FastAPI template: ``settings`` (env vars ``PUZZLE_*``), ``db`` (engine, sessions, schema
check), ``models`` (SQLAlchemy tables), ``schemas`` (pydantic ``XCreate / XPublic / XsPublic``), ``crud``
(keyword-only functions, the only code that writes the job store), ``api`` (routes, dependencies and the one
place errors become HTTP statuses) and ``static`` (the dashboard: plain HTML + JS, Plotly served locally).
"""
