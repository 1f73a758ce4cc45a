"""Pure builders: a resolved Workspace -> NodeClaims, StatefulSet, Services, Job, ConfigMaps."""
