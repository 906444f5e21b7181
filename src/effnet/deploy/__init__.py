"""Deployment: the fast torch inference path (``effnet.deploy.optimize``), int8 post-training
quantization (``effnet.deploy.quantize``), verified export (``effnet.deploy.export``) and runtime
sessions over torch, ONNX Runtime and OpenVINO (``effnet.deploy.runtime``).

Nothing is imported here, so the heavy quantization / export imports wait until asked for.
``effnet.optimize`` is the *function* ``effnet.deploy.runtime.optimize``: with the default
``runtime="torch"`` it is the torch path, ``effnet.deploy.optimize.optimize``; with another runtime
it returns a session on that runtime. ``effnet.deploy.optimize`` is the module of the torch path.
"""
