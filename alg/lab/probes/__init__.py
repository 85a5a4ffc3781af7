"""Scripts run inside the lab's namespaces (`ip netns exec ... python ...`), not imported by
the rest of the lab: the ftplib client probe and the bench's raw-socket probe."""
