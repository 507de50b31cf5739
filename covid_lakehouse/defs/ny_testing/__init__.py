"""NYS COVID-19 testing per county (health.data.ny.gov xdss-u53e): daily download at 09:00 New York
time, one warehouse table per county, write-audit-publish. See docs/ny_testing.md."""
