FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY flowscope ./flowscope
COPY exporter ./exporter
COPY backend ./backend
RUN pip install --no-cache-dir '.[server]'
ENV FLOWSCOPE_HOST=0.0.0.0 FLOWSCOPE_PORT=9464
EXPOSE 9464
USER nobody
ENTRYPOINT ["flowscope"]
CMD ["serve"]
