# The platform's image: `wicket issuer`, as the unprivileged distroless
# user, state in /var/lib/wicket (a volume; run `wicket issuer init` once
# against it). Build from the repository root:
#   docker build -f packaging/docker/issuer.Dockerfile \
#     --build-arg WICKET_VERSION=$(git describe --tags) --build-arg WICKET_COMMIT=$(git rev-parse HEAD) .
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG WICKET_VERSION=dev
ARG WICKET_COMMIT=unknown
ARG TARGETARCH=amd64
RUN WICKET_VERSION=$WICKET_VERSION WICKET_COMMIT=$WICKET_COMMIT \
    packaging/release.sh --out /out --arch "$TARGETARCH" --bin wicket && \
    cp "/out/wicket_${WICKET_VERSION}_linux_${TARGETARCH}" /out/wicket && \
    install -d -m 0700 -o 65532 -g 65532 /out/state /out/run

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/wicket /usr/local/bin/wicket
COPY --from=build --chown=65532:65532 /out/state /var/lib/wicket
COPY --from=build --chown=65532:65532 /out/run /run/wicket-issuer
COPY examples/issuer.toml /etc/wicket/issuer.toml.example
USER 65532:65532
VOLUME ["/var/lib/wicket"]
EXPOSE 8650
ENTRYPOINT ["/usr/local/bin/wicket", "issuer", "--config", "/etc/wicket/issuer.toml", "--admin-socket", "/run/wicket-issuer/admin.sock"]
