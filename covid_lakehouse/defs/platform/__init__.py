"""Platform assets: a smoke test of every service the domains rely on, and run-failure alerting."""
