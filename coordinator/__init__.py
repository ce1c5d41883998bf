"""The ``ferry`` coordinator: plan, launch, watch, control and roll back runs."""
