"""The pure planner: plan(workspace, observed) -> objects to apply/delete, status, requeue."""
