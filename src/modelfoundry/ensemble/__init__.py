"""Ensembles of trained models: how members' outputs combine (average, vote, stack), one ONNX graph for them."""
