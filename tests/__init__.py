"""The project's tests as a regular package, so that ``from tests.converter_fixtures import ...`` finds this
folder even when an installed distribution ships a top-level ``tests`` package of its own (sleap-io's wheels
do: a namespace folder without ``__init__.py`` loses to any regular ``tests`` package on sys.path)."""
