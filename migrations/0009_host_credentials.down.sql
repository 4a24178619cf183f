-- lossy: host_credentials, bootstrap_tokens
-- Loses every bootstrap token and host credential: agents must enroll again
-- with a bootstrap token configured anew.
DROP TABLE host_credentials;
DROP TABLE bootstrap_tokens;
