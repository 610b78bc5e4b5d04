# The guest's image: wicket-agent as the entrypoint, running the workload
# (CMD) under `wicket-agent agent run`. Build from the repository root:
#   docker build -f packaging/docker/agent.Dockerfile \
#     --build-arg WICKET_VERSION=$(git describe --tags) --build-arg WICKET_COMMIT=$(git rev-parse HEAD) .
# and base a workload's image on it, or copy /usr/local/bin/wicket-agent
# into one. The agent runs as root (it must stay out of the workload's
# reach); `agent run` refuses a root workload: give --user.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG WICKET_VERSION=dev
ARG WICKET_COMMIT=unknown
ARG TARGETARCH=amd64
RUN WICKET_VERSION=$WICKET_VERSION WICKET_COMMIT=$WICKET_COMMIT \
    packaging/release.sh --out /out --arch "$TARGETARCH" --bin wicket-agent && \
    cp "/out/wicket-agent_${WICKET_VERSION}_linux_${TARGETARCH}" /out/wicket-agent

FROM gcr.io/distroless/static-debian12
COPY --from=build /out/wicket-agent /usr/local/bin/wicket-agent
COPY examples/agent.toml /etc/wicket/agent.toml.example
USER 0:0
ENTRYPOINT ["/usr/local/bin/wicket-agent", "agent", "run", "--config", "/etc/wicket/agent.toml", "--user", "65532", "--group", "65532", "--"]
CMD ["/bin/sh", "-c", "echo no workload given: set CMD; exit 64"]
