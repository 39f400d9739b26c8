"""The edgekit agent: a small HTTP service that runs on the device itself and builds and measures
engines there with edgekit's local backends, so a host can get measured numbers from a device it
cannot run on. `server` (on the device), `client` (on the host); `store`, `worker` and `runner` do the
jobs one at a time, on disk, so nothing is lost when the agent stops."""
