"""Export: the curated dataset (dataset), the round's model as adapter, merged model or GGUF
folder (model, gguf) with its model card (model_card); never overwriting (paths).

May import everything but semievol.cli.
"""
