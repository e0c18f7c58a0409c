"""Runs: a round's steps as a background or foreground run. The run table (jobs), what a
running step reports into its row (progress), starting, executing and resuming runs through
the step runner (launch), and how long they should take (estimate, over the work each step
does, work, and this machine's speed measured before its first round, calibrate).

The run table sits below the runner: jobs and progress import only the workspace; launch
and the estimate may import everything but semievol.views, semievol.export and semievol.cli.
"""
