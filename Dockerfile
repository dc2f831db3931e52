# Builds the trellis binary for the scale-out stack in docker-compose.yml.
FROM rust:1.90-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --bin trellis

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/trellis /usr/local/bin/trellis
ENV TRELLIS_DATA_DIR=/var/lib/trellis
VOLUME /var/lib/trellis
ENTRYPOINT ["trellis"]
