DROP TABLE receipts;
DROP TABLE registers;
