# The meterline binary. Build: docker build -t meterline .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      cmake libcurl4-openssl-dev libssl-dev libsasl2-dev zlib1g-dev libzstd-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin meterline

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 libsasl2-2 libcurl4 zlib1g libzstd1 \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 meterline \
    && mkdir -p /var/lib/meterline/notifications && chown -R meterline /var/lib/meterline
COPY --from=build /src/target/release/meterline /usr/local/bin/meterline
USER meterline
ENTRYPOINT ["/usr/local/bin/meterline"]
