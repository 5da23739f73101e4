# blockferry worker image: Debian bookworm, libnbd from Debian.
#
#   docker build -t blockferry .
#   docker run --rm blockferry --help
#
# The build stage obtains libnbd's Go bindings exactly as `make build` and CI do:
# deploy/scripts/setup-deps.sh (Debian's libnbd source package served as a
# file:// Go module proxy).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY deploy/scripts/setup-deps.sh deploy/scripts/setup-deps.sh
RUN bash deploy/scripts/setup-deps.sh --build-only
COPY go.mod go.sum Makefile ./
RUN make -s deps
COPY . .
RUN make build

FROM debian:bookworm-slim
RUN apt-get update \
	&& apt-get install -y --no-install-recommends libnbd0 ca-certificates \
	&& rm -rf /var/lib/apt/lists/* \
	&& useradd --system --uid 10001 --user-group --home-dir /var/lib/blockferry --create-home blockferry
COPY --from=build /src/bin/blockferry /usr/local/bin/blockferry
USER blockferry
ENV BLOCKFERRY_DATA_DIR=/var/lib/blockferry \
	BLOCKFERRY_HTTP=0.0.0.0:9090
VOLUME /var/lib/blockferry
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s CMD ["blockferry", "healthcheck"]
ENTRYPOINT ["blockferry"]
CMD ["worker"]
