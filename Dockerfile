# syntax=docker/dockerfile:1
# Build: compile TypeScript with dev dependencies, then ship only runtime deps, dist/ and lua/.
# Debian bookworm (glibc 2.36) because the uWebSockets.js native binary needs glibc, not musl.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
COPY cli ./cli
COPY bench ./bench
COPY lua ./lua
RUN npm run build && npm prune --omit=dev
# what the runtime never loads: uWebSockets.js ships 18 native binaries (92 MB) and a JS fallback (20 MB)
# that serve refuses to run on; only the binary of this platform and Node ABI stays (the runtime stage's
# node is this one). Also the benchmarks (they need dev dependencies), source maps and type declarations
RUN keep="uws_$(node -p 'process.platform + "_" + process.arch + "_" + process.versions.modules').node" \
 && find node_modules/uWebSockets.js/binaries -type f ! -name "$keep" -delete \
 && rm -rf node_modules/uWebSockets.js/dist node_modules/uWebSockets.js/docs dist/bench \
 && find dist \( -name '*.map' -o -name '*.d.ts' \) -delete

FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    PORT=7480
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/lua ./lua
# fail the build unless uWebSockets.js loads its native binary (the fallback is gone: it would throw)
RUN node -e "const u=require('uWebSockets.js'); if (!String(u.App).includes('[native code]')) process.exit(1)"
USER node
# 7480: the API (serve); 7481: the ops port of a standalone `snapshot` writer
EXPOSE 7480 7481
# /healthz on the port the running command was given (--port / --metrics-port, else PORT /
# SNAPSHOT_METRICS_PORT, else 7480 / 7481), read from PID 1's command line (docker-init's too, with --init)
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["node", "/app/dist/cli/healthcheck.js"]
# absolute, so a changed working_dir (compose, docker run -w) still finds the CLI
ENTRYPOINT ["node", "/app/dist/cli/main.js"]
CMD ["serve"]
