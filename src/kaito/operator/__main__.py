"""`python -m kaito.operator`: run the Workspace operator with settings from KAITO_* variables."""

from kaito.operator.main import run

run()
