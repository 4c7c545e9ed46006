"""Real-browser tests of the studio (a package, so the tests can share conftest helpers)."""
