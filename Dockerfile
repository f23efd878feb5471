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

FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    PORT=7480
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/lua ./lua
# fail the build if uWebSockets.js would fall back to its slow JS shim
RUN node -e "const u=require('uWebSockets.js'); if (!String(u.App).includes('[native code]')) process.exit(1)"
USER node
# 7480: the API (serve); 7481: the ops port of a standalone `snapshot` writer
EXPOSE 7480 7481
# /healthz on the port the running command was given (--port / --metrics-port, else PORT /
# SNAPSHOT_METRICS_PORT, else 7480 / 7481), read from PID 1's command line (docker-init's too, with --init)
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["node", "/app/dist/cli/healthcheck.js"]
ENTRYPOINT ["node", "dist/cli/main.js"]
CMD ["serve"]
