"""Node provisioning back-ends: NodeClaims (gpu-provisioner, Karpenter), existing nodes, kwok."""
