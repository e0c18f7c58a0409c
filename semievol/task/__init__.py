"""The task: what a prompt says (the chat messages of every step, semievol.task.formats)
and how an answer is read and compared (the checkers, semievol.task.answers).

Pure text rules over a `TaskConfig`: no model, no database. May import only the foundation
(semievol.errors, semievol.config, semievol.saved_config, semievol.profiling).
"""
