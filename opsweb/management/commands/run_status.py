"""Show a run: status, step, timings, approvals and its last events.

    manage.py run_status 12 --wait --timeout 900

Exit 1 if the run ended failed, rejected, cancelled, expired, superseded or stopped, with or
without --wait.
"""

from opsweb.cli import OpswebCommand, Outcome, ending, find_run, require_perm, run_lines


class Command(OpswebCommand):
    help = "Show a run (status, step, timings, approvals, last events); --wait follows it."
    waits = True
    read_only = True

    def add_command_arguments(self, parser):
        parser.add_argument("run", metavar="RUN", help="The run id.")

    def act(self, user, options):
        require_perm(user, "view_run", "view runs")
        return Outcome("", runs=[find_run(options["run"], options["app"])])

    def exit_code_without_wait(self, runs):
        return ending([run for run in runs if run.is_terminal])

    def report(self, outcome, code, problem):
        if self.as_json:
            return super().report(outcome, code, problem)
        self.stdout.write("\n".join(run_lines(outcome.runs[0], events=10)))
