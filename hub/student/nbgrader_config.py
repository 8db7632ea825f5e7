"""nbgrader configuration of the students' servers on the course hub (JUPYTER_CONFIG_PATH=hub/student)."""

import os
import sys

c = get_config()  # noqa: F821
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # hub/ for private_submit

c.CourseDirectory.course_id = "dgm-flows"
c.Exchange.root = os.environ.get("NBGRADER_EXCHANGE") or "/srv/nbgrader/exchange"
c.Exchange.path_includes_course = True
if os.environ.get("JUPYTERHUB_USER"):
    c.CourseDirectory.student_id = os.environ["JUPYTERHUB_USER"]  # the hub login is the student id
# submissions: folder 0700 and files 0600, owned by the student (nbgrader makes them 0777/0644)
c.ExchangeFactory.submit = "private_submit.PrivateSubmit"
