"""Visible tests, one module per assignment (named like the assignment). See solutions/README.md."""
