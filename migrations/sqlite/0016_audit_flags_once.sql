-- Flags the jobs write (an account taken below zero by a usage batch or a refund) are appended once per cause, even
-- when a job runs again after a crash: the job looks for the same action, subject and reason before it appends.
-- This index makes that lookup a probe of one subject's records rather than a scan of the log.
CREATE INDEX audit_log_subject_action ON audit_log (subject, action);
