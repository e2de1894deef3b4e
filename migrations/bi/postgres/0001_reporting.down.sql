DROP MATERIALIZED VIEW monthly_sales;
DROP VIEW sales_last_30_days;
DROP TABLE customer_segments;
DROP TABLE daily_sales;
