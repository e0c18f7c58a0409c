"""The `semievol` command line: every command a thin call into the library function the
app calls (main: the parser and the workspace commands; engine: the round's steps and runs;
review: decisions, review, audit, lineage, export), the terminal's progress bars
(terminal), the demo workspace (demo) and flags made from the config dataclasses (flags).

The top of the stack: may import every part; nothing in the library imports it.
"""
