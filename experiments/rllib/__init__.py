"""RLlib glue: the RLModule around any memory, PPO configs on both API stacks and for POPGym's
own models (`ppo.algorithm_config`), old-stack sampling and minibatches (`batching`), env
seeding (`seeding`), Ray worker set-up (`workers`) and rollout of a trained policy."""
