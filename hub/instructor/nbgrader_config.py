"""nbgrader configuration of the instructors' servers: the course's own configuration (formgrader, course list)."""

import os

c = get_config()  # noqa: F821
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
load_subconfig(os.path.join(REPO, "nbgrader_config.py"))  # noqa: F821
