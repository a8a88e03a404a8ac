"""rpmimg command-line front."""
