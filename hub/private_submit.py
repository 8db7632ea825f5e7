"""nbgrader's submit, with the submission private to its owner (folder 0700, files 0600).

nbgrader 0.9.6 leaves a submission's folder mode 0777 and its files 0644 in the inbound folder: anyone who
knows (or finds) its name can read it or add files.  The grader collects as root, so the owner alone is enough.
"""

import os

from nbgrader.exchange.default.submit import ExchangeSubmit


class PrivateSubmit(ExchangeSubmit):
    def copy_files(self):
        super().copy_files()
        dest = os.path.join(self.inbound_path, self.assignment_filename)
        for root, dirs, files in os.walk(dest):
            for f in files:
                os.chmod(os.path.join(root, f), 0o600)
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o700)
        os.chmod(dest, 0o700)
