-- The analyst reads the published ads.ads, not the archive's bookkeeping (archive_batches, archive_pending).
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'analyst') THEN
        GRANT USAGE ON SCHEMA ads TO analyst;
        GRANT SELECT ON ads.ads TO analyst;
    END IF;
END
$$;
