# creditflow image: build the release binary, run it on a slim Debian as an unprivileged user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p creditflow && cp target/release/creditflow /creditflow

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* && useradd --system --home /var/lib/creditflow --create-home creditflow
COPY --from=build /creditflow /usr/local/bin/creditflow
USER creditflow
WORKDIR /var/lib/creditflow
ENV CREDITFLOW_LISTEN=0.0.0.0:8080 CREDITFLOW_LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["creditflow"]
CMD ["serve"]
