"""The command layer: one module per `effnet` command group, each exposing ``register(subparsers)``.

Handlers are named ``cmd_<command>``; they parse nothing themselves, call the library's plain
functions and print. The library packages below know nothing of argparse. Heavy imports stay
inside the handlers so that `effnet --help` does not load torch.
"""
