"""The mediation engine's actors: takes, dispute chat, solver authorization, starts."""
