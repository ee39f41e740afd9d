"""The sandbox's web page (page.py, and its static files in static/)."""
