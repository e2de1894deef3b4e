-- Reporting tables fed by the event bus, and the views BI dashboards read.
CREATE TABLE daily_sales (
    day          date NOT NULL,
    register_id  text NOT NULL,
    receipts     integer NOT NULL,
    gross        numeric(14, 2) NOT NULL,
    PRIMARY KEY (day, register_id)
);

CREATE TABLE customer_segments (
    customer_no  text PRIMARY KEY,
    segment      text NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE VIEW sales_last_30_days AS
SELECT day, sum(gross) AS gross, sum(receipts) AS receipts
FROM daily_sales
WHERE day >= current_date - 30
GROUP BY day;

CREATE MATERIALIZED VIEW monthly_sales AS
SELECT date_trunc('month', day)::date AS month, sum(gross) AS gross
FROM daily_sales
GROUP BY 1;

-- valero:allow require-concurrent-index-creation the view is created empty by this same migration; nothing waits on it yet
CREATE UNIQUE INDEX monthly_sales_month_idx ON monthly_sales (month);
