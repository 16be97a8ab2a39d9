-- The customer's database "shop", created by the target's entrypoint at first start.
-- Deterministic; row counts: customers 1000, orders 500, products 50.
SET ROLE ferry;

CREATE TABLE products (
	id      integer PRIMARY KEY,
	sku     text NOT NULL UNIQUE,
	name    text NOT NULL,
	price   numeric(10, 2) NOT NULL
);
INSERT INTO products
SELECT i, format('SKU-%05s', i), format('Product %s', i), (i * 7 % 500) + 0.99
FROM generate_series(1, 50) AS i;

CREATE TABLE customers (
	id      integer PRIMARY KEY,
	name    text NOT NULL,
	email   text NOT NULL UNIQUE,
	created timestamptz NOT NULL
);
INSERT INTO customers
SELECT i, format('Customer %s', i), format('customer%s@example.com', i),
	timestamptz '2024-01-01 00:00:00+00' + i * interval '1 hour'
FROM generate_series(1, 1000) AS i;

CREATE TABLE orders (
	id          integer PRIMARY KEY,
	customer_id integer NOT NULL REFERENCES customers,
	product_id  integer NOT NULL REFERENCES products,
	quantity    integer NOT NULL,
	ordered     timestamptz NOT NULL
);
INSERT INTO orders
SELECT i, (i * 13 % 1000) + 1, (i * 7 % 50) + 1, (i % 5) + 1,
	timestamptz '2025-01-01 00:00:00+00' + i * interval '90 minutes'
FROM generate_series(1, 500) AS i;
