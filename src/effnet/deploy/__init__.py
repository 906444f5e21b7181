"""Deployment: the fast inference path (``effnet.deploy.optimize``), int8 post-training
quantization (``effnet.deploy.quantize``) and verified export (``effnet.deploy.export``).

Nothing is imported here: ``effnet.optimize`` is the *function*
``effnet.deploy.optimize.optimize``, while ``effnet.deploy.optimize`` is the module, and the
heavy quantization / export imports stay lazy until asked for.
"""
