# The operator image (built elsewhere: there is no Docker engine on the development machines).
FROM python:3.11-slim
RUN useradd --uid 10001 --create-home rewind
WORKDIR /app
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY testbed ./testbed
RUN pip install --no-cache-dir .
USER 10001
ENTRYPOINT ["rewind"]
CMD ["run"]
