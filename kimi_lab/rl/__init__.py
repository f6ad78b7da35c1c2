"""Joint text-vision RL: tool-using rollouts, the K2.5 policy loss, Toggle."""
