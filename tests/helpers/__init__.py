"""Code the tests share (``tests/`` is on ``sys.path`` under pytest; worker scripts in ``tests/workers/`` put it
there themselves): ``from helpers.training import train_overrides``. Test modules never import each other."""
