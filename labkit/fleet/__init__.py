"""Fleet engines: where lab hosts come from (local nspawn hosts or AWS EC2)."""
