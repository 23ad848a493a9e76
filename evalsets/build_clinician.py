"""Build evalsets/clinician.jsonl from the hand-written specs below.

Each question was written by hand, the way hospital staff ask, and its gold query was then looked up
in the demo database (data/mimicsql.db): the values are the ones the database stores, in its
casing. The SQL is produced by the project's own renderer (medsql.sqlform.render_sql), with the
conditions in the dataset's order (table order; within DEMOGRAPHIC the text columns first, then
the numeric AGE/DAYS_STAY/DOB_YEAR/DOD_YEAR/ADMITYEAR; then schema column order), so each gold
query is in exactly MIMICSQL's form.

    .venv/bin/python evalsets/build_clinician.py          # write evalsets/clinician.jsonl
    .venv/bin/python evalsets/build_clinician.py --show   # also print each question's result

Then run `python evalsets/check_clinician.py` for the checks and coverage counts.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medsql.schema import TABLE_ORDER, TABLES  # noqa: E402
from medsql.sqlform import Condition, Query, render_sql  # noqa: E402

OUT = Path(__file__).with_name("clinician.jsonl")
T = {"D": "DEMOGRAPHIC", "DX": "DIAGNOSES", "PR": "PROCEDURES", "RX": "PRESCRIPTIONS", "L": "LAB"}
CODE_COLUMNS = {"ICD9_CODE", "FORMULARY_DRUG_CD", "ITEMID"}
NUMERIC = {"AGE", "DAYS_STAY", "DOB_YEAR", "DOD_YEAR", "ADMITYEAR"}

# phenomena tags (short names used below -> vocabulary word)
TAGS = {"abbr": "abbreviation", "lay": "lay_term", "cmp": "comparison", "verb": "relation_verb",
        "imp": "imperative", "pt": "specific_patient", "multi": "multi_condition", "agg": "aggregation",
        "code": "code"}

# Abbreviations and clipped forms staff use; a question holding one is tagged "abbreviation".
ABBREVIATIONS = [
    "pt", "pts", "er", "ed", "icu", "los", "dx", "snf", "icf", "iv", "po", "pr", "subq", "ng", "pca", "im", "ih",
    "afib", "chf", "htn", "uti", "copd", "esrd", "gerd", "mrsa", "dm", "mi", "nstemi", "c diff", "sob", "gi", "tia",
    "prbcs", "hrs", "tpn", "peg", "ivc", "ercp", "bipap", "trach", "cath", "echo", "vent", "meds", "pressors", "epo",
    "kcl", "a1c", "nt-probnp", "tsh", "bun", "csf", "vanc", "dig", "dob", "nos", "icd9", "hcl", "d/t", "d50", "amp",
    "osa",
    "avg", "max", "admit", "admits", "thru",
]
ABBREVIATION_RE = re.compile(r"(?<![\w-])(" + "|".join(re.escape(a) for a in ABBREVIATIONS) + r")(?![\w-])",
                             re.IGNORECASE)
# A question opening with one of these verbs is tagged "imperative".
IMPERATIVE_VERBS = {"count", "list", "show", "give", "pull", "get", "find", "tell"}

CD = ("count_distinct", "D", "SUBJECT_ID")


def col(t, c):
    return (None, t, c)


def agg(a, t, c):
    return (a, t, c)


def condition_order(c: Condition):
    numeric_group = c.table == "DEMOGRAPHIC" and c.column in NUMERIC
    return (TABLE_ORDER.index(c.table), numeric_group, TABLES[c.table].index(c.column))


def select_order(item):
    _, t, c = item
    return (TABLE_ORDER.index(t), TABLES[t].index(c))


# (question, select items, conditions, tags). Select items: CD, col(t, c) or agg(a, t, c) with the
# short table names of T; conditions: (t, column, op, value). Only "lay" (lay_term) and "verb"
# (relation_verb) are tagged by hand; abbreviation and imperative come from the lexicons above, and
# multi_condition, comparison, aggregation, specific_patient and code from the query itself.
SPECS = [
    # ---------------------------------------------------------------- DEMOGRAPHIC: counts
    ("how many female pts over 65?", [CD], [("D", "GENDER", "=", "F"), ("D", "AGE", ">", "65")], []),
    ("count pts 80 or older", [CD], [("D", "AGE", ">=", "80")], []),
    ("number of men younger than 50", [CD], [("D", "GENDER", "=", "M"), ("D", "AGE", "<", "50")], []),
    ("how many pts came in through the ER?", [CD], [("D", "ADMISSION_LOCATION", "=", "EMERGENCY ROOM ADMIT")],
     ["verb"]),
    ("how many of our patients were elective admits", [CD], [("D", "ADMISSION_TYPE", "=", "ELECTIVE")], []),
    ("urgent admissions - how many pts?", [CD], [("D", "ADMISSION_TYPE", "=", "URGENT")], []),
    ("how many pts were transferred in from an outside hospital", [CD],
     [("D", "ADMISSION_LOCATION", "=", "TRANSFER FROM HOSP/EXTRAM")], ["verb", "lay"]),
    ("pts discharged to a snf, how many", [CD], [("D", "DISCHARGE_LOCATION", "=", "SNF")], ["verb"]),
    ("how many patients went to rehab after discharge?", [CD],
     [("D", "DISCHARGE_LOCATION", "=", "REHAB/DISTINCT PART HOSP")], ["verb", "lay"]),
    ("count the pts sent home with home health", [CD], [("D", "DISCHARGE_LOCATION", "=", "HOME HEALTH CARE")],
     ["verb"]),
    ("how many pts expired during the hospital stay (discharged dead)?", [CD],
     [("D", "DISCHARGE_LOCATION", "=", "DEAD/EXPIRED")], ["verb"]),
    ("how many medicaid pts do we have", [CD], [("D", "INSURANCE", "=", "Medicaid")], []),
    ("count medicare pts aged 75 and up", [CD], [("D", "INSURANCE", "=", "Medicare"), ("D", "AGE", ">=", "75")], []),
    ("how many women have private insurance", [CD], [("D", "GENDER", "=", "F"), ("D", "INSURANCE", "=", "Private")],
     []),
    ("how many pts speak spanish", [CD], [("D", "LANGUAGE", "=", "SPAN")], ["verb"]),
    ("russian-speaking pts over 70: how many?", [CD], [("D", "LANGUAGE", "=", "RUSS"), ("D", "AGE", ">", "70")], []),
    ("how many jewish patients have passed away", [CD],
     [("D", "RELIGION", "=", "JEWISH"), ("D", "EXPIRE_FLAG", "=", "1")], ["verb"]),
    ("number of catholic pts who came in via the ED", [CD],
     [("D", "RELIGION", "=", "CATHOLIC"), ("D", "ADMISSION_LOCATION", "=", "EMERGENCY ROOM ADMIT")], ["verb"]),
    ("how many widowed women are there", [CD], [("D", "MARITAL_STATUS", "=", "WIDOWED"), ("D", "GENDER", "=", "F")],
     []),
    ("divorced pts - total count", [CD], [("D", "MARITAL_STATUS", "=", "DIVORCED")], []),
    ("how many single pts are under 40", [CD], [("D", "MARITAL_STATUS", "=", "SINGLE"), ("D", "AGE", "<", "40")], []),
    ("count african american patients", [CD], [("D", "ETHNICITY", "=", "BLACK/AFRICAN AMERICAN")], []),
    ("count asian pts", [CD], [("D", "ETHNICITY", "=", "ASIAN")], []),
    ("how many white pts are on medicaid", [CD],
     [("D", "INSURANCE", "=", "Medicaid"), ("D", "ETHNICITY", "=", "WHITE")], []),
    ("how many pts were admitted for pneumonia", [CD], [("D", "DIAGNOSIS", "=", "PNEUMONIA")], ["verb"]),
    ("how many came in with chf as the admitting dx", [CD], [("D", "DIAGNOSIS", "=", "CONGESTIVE HEART FAILURE")],
     ["verb"]),
    ("count pts admitted for sepsis who stayed more than a week", [CD],
     [("D", "DIAGNOSIS", "=", "SEPSIS"), ("D", "DAYS_STAY", ">", "7")], ["verb", "lay"]),
    ("how many pts were admitted with sob", [CD], [("D", "DIAGNOSIS", "=", "SHORTNESS OF BREATH")], ["verb"]),
    ("how many people came in for an upper gi bleed", [CD], [("D", "DIAGNOSIS", "=", "UPPER GI BLEED")], ["verb"]),
    ("how many pts had a los over 20 days?", [CD], [("D", "DAYS_STAY", ">", "20")], []),
    ("count pts with a length of stay of 2 days or less", [CD], [("D", "DAYS_STAY", "<=", "2")], []),
    ("how many patients stayed exactly 4 days", [CD], [("D", "DAYS_STAY", "=", "4")], ["verb"]),
    ("how many pts were born before 1900?", [CD], [("D", "DOB_YEAR", "<", "1900")], []),
    ("count pts born after 2100", [CD], [("D", "DOB_YEAR", ">", "2100")], []),
    ("how many patients died in or before 2120", [CD], [("D", "DOD_YEAR", "<=", "2120")], ["verb"]),
    ("how many pts passed away before 2110?", [CD], [("D", "DOD_YEAR", "<", "2110")], ["verb"]),
    ("how many pts were admitted before 2110", [CD], [("D", "ADMITYEAR", "<", "2110")], ["verb"]),
    ("number of patients admitted in 2190 or later", [CD], [("D", "ADMITYEAR", ">=", "2190")], ["verb"]),
    ("how many pts admitted as emergencies were over 80", [CD],
     [("D", "ADMISSION_TYPE", "=", "EMERGENCY"), ("D", "AGE", ">", "80")], ["verb"]),
    ("how many of the pts have expired", [CD], [("D", "EXPIRE_FLAG", "=", "1")], ["verb"]),
    ("how many men died before 2130", [CD], [("D", "GENDER", "=", "M"), ("D", "DOD_YEAR", "<", "2130")], ["verb"]),
    ("female medicare pts over 80 - how many?", [CD],
     [("D", "GENDER", "=", "F"), ("D", "INSURANCE", "=", "Medicare"), ("D", "AGE", ">", "80")], []),
    ("how many married men stayed longer than 10 days", [CD],
     [("D", "MARITAL_STATUS", "=", "MARRIED"), ("D", "GENDER", "=", "M"), ("D", "DAYS_STAY", ">", "10")], ["verb"]),
    ("how many pts admitted thru the ER for pneumonia were discharged to a snf", [CD],
     [("D", "ADMISSION_LOCATION", "=", "EMERGENCY ROOM ADMIT"), ("D", "DISCHARGE_LOCATION", "=", "SNF"),
      ("D", "DIAGNOSIS", "=", "PNEUMONIA")], ["verb"]),
    ("how many pts came to us from a nursing home (skilled nursing transfer)", [CD],
     [("D", "ADMISSION_LOCATION", "=", "TRANSFER FROM SKILLED NUR")], ["verb", "lay"]),
    ("how many pts went home on hospice", [CD], [("D", "DISCHARGE_LOCATION", "=", "HOSPICE-HOME")], ["verb"]),
    ("of the pts discharged home, how many were under 60?", [CD],
     [("D", "DISCHARGE_LOCATION", "=", "HOME"), ("D", "AGE", "<", "60")], ["verb"]),
    ("how many pts are covered by government insurance", [CD], [("D", "INSURANCE", "=", "Government")], ["verb"]),
    ("english speaking pts admitted electively - number?", [CD],
     [("D", "LANGUAGE", "=", "ENGL"), ("D", "ADMISSION_TYPE", "=", "ELECTIVE")], ["verb"]),
    ("count patients whose admitting dx was stroke/tia", [CD], [("D", "DIAGNOSIS", "=", "STROKE/TIA")], []),
    ("how many pts 60 or younger came in as emergencies", [CD],
     [("D", "ADMISSION_TYPE", "=", "EMERGENCY"), ("D", "AGE", "<=", "60")], ["verb"]),
    ("number of medicare patients with a stay of at least 14 days", [CD],
     [("D", "INSURANCE", "=", "Medicare"), ("D", "DAYS_STAY", ">=", "14")], []),
    ("how many women were born in or before 2050 and admitted through the emergency room", [CD],
     [("D", "GENDER", "=", "F"), ("D", "ADMISSION_LOCATION", "=", "EMERGENCY ROOM ADMIT"),
      ("D", "DOB_YEAR", "<=", "2050")], ["verb"]),
    ("how many protestant quaker pts are under 70", [CD],
     [("D", "RELIGION", "=", "PROTESTANT QUAKER"), ("D", "AGE", "<", "70")], []),
    ("pts admitted for sepsis - how many went to an icf?", [CD],
     [("D", "DISCHARGE_LOCATION", "=", "ICF"), ("D", "DIAGNOSIS", "=", "SEPSIS")], ["verb"]),
    ("how many pts sent in by their doctor (physician referral) are on medicare", [CD],
     [("D", "INSURANCE", "=", "Medicare"), ("D", "ADMISSION_LOCATION", "=", "PHYS REFERRAL/NORMAL DELI")],
     ["verb", "lay"]),
    ("how many pts with unknown ethnicity", [CD], [("D", "ETHNICITY", "=", "UNKNOWN/NOT SPECIFIED")], []),
    ("how many pts had an elective admission in 2150 or later?", [CD],
     [("D", "ADMISSION_TYPE", "=", "ELECTIVE"), ("D", "ADMITYEAR", ">=", "2150")], []),
    ("how many people were admitted for a seizure", [CD], [("D", "DIAGNOSIS", "=", "SEIZURE")], ["verb"]),
    ("how many widowed pts are below 80", [CD], [("D", "MARITAL_STATUS", "=", "WIDOWED"), ("D", "AGE", "<", "80")],
     []),
    ("count pts sent home whose stay was at most 3 days", [CD],
     [("D", "DISCHARGE_LOCATION", "=", "HOME"), ("D", "DAYS_STAY", "<=", "3")], ["verb"]),
    ("elective pts who stayed no more than 5 days - how many?", [CD],
     [("D", "ADMISSION_TYPE", "=", "ELECTIVE"), ("D", "DAYS_STAY", "<=", "5")], ["verb"]),
    ("how many pts died in 2180 or later", [CD], [("D", "DOD_YEAR", ">=", "2180")], ["verb"]),
    ("how many patients were admitted after 2180", [CD], [("D", "ADMITYEAR", ">", "2180")], ["verb"]),
    ("number of pts admitted in or before 2120", [CD], [("D", "ADMITYEAR", "<=", "2120")], ["verb"]),
    ("how many pts were born in 2100 or later", [CD], [("D", "DOB_YEAR", ">=", "2100")], []),
    ("how many pts are 30 or under", [CD], [("D", "AGE", "<=", "30")], []),
    ("how many pts passed away after 2190", [CD], [("D", "DOD_YEAR", ">", "2190")], ["verb"]),

    # ---------------------------------------------------------------- DEMOGRAPHIC: max / min / avg
    ("oldest pt admitted for sepsis - what age?", [agg("max", "D", "AGE")], [("D", "DIAGNOSIS", "=", "SEPSIS")],
     ["verb"]),
    ("what's the max age of our medicaid patients", [agg("max", "D", "AGE")], [("D", "INSURANCE", "=", "Medicaid")],
     []),
    ("age of the youngest pt who came in through the ER", [agg("min", "D", "AGE")],
     [("D", "ADMISSION_LOCATION", "=", "EMERGENCY ROOM ADMIT")], ["verb"]),
    ("youngest female pt, how old?", [agg("min", "D", "AGE")], [("D", "GENDER", "=", "F")], []),
    ("average age of pts discharged to snf", [agg("avg", "D", "AGE")], [("D", "DISCHARGE_LOCATION", "=", "SNF")],
     ["verb"]),
    ("mean age of married patients?", [agg("avg", "D", "AGE")], [("D", "MARITAL_STATUS", "=", "MARRIED")], []),
    ("avg los for emergency admissions", [agg("avg", "D", "DAYS_STAY")], [("D", "ADMISSION_TYPE", "=", "EMERGENCY")],
     []),
    ("longest stay among pts admitted for liver failure", [agg("max", "D", "DAYS_STAY")],
     [("D", "DIAGNOSIS", "=", "LIVER FAILURE")], ["verb"]),
    ("shortest los of the pts who went to rehab", [agg("min", "D", "DAYS_STAY")],
     [("D", "DISCHARGE_LOCATION", "=", "REHAB/DISTINCT PART HOSP")], ["verb", "lay"]),
    ("what's the average length of stay for medicare pts over 80", [agg("avg", "D", "DAYS_STAY")],
     [("D", "INSURANCE", "=", "Medicare"), ("D", "AGE", ">", "80")], []),
    ("max los in days for pts under 30", [agg("max", "D", "DAYS_STAY")], [("D", "AGE", "<", "30")], []),
    ("youngest age among pts who died during their admission", [agg("min", "D", "AGE")],
     [("D", "DISCHARGE_LOCATION", "=", "DEAD/EXPIRED")], ["verb"]),
    ("avg age of patients admitted with pneumonia", [agg("avg", "D", "AGE")], [("D", "DIAGNOSIS", "=", "PNEUMONIA")],
     ["verb"]),
    ("how old was the oldest pt that stayed over 30 days", [agg("max", "D", "AGE")], [("D", "DAYS_STAY", ">", "30")],
     ["verb"]),
    ("minimum los for men admitted emergently", [agg("min", "D", "DAYS_STAY")],
     [("D", "GENDER", "=", "M"), ("D", "ADMISSION_TYPE", "=", "EMERGENCY")], ["verb"]),
    ("average age of white female patients", [agg("avg", "D", "AGE")],
     [("D", "GENDER", "=", "F"), ("D", "ETHNICITY", "=", "WHITE")], []),
    ("avg los for pts transferred from another hospital", [agg("avg", "D", "DAYS_STAY")],
     [("D", "ADMISSION_LOCATION", "=", "TRANSFER FROM HOSP/EXTRAM")], ["verb", "lay"]),
    ("what's the oldest age among the russian speakers", [agg("max", "D", "AGE")], [("D", "LANGUAGE", "=", "RUSS")],
     []),

    # ---------------------------------------------------------------- DEMOGRAPHIC: specific patients
    ("dob for pt 10019", [col("D", "DOB")], [("D", "SUBJECT_ID", "=", "10019")], []),
    ("what insurance does thomas maly have?", [col("D", "INSURANCE")], [("D", "NAME", "=", "Thomas Maly")], []),
    ("when did patient 42135 die", [col("D", "DOD")], [("D", "SUBJECT_ID", "=", "42135")], ["verb"]),
    ("age and sex of pt 40310", [col("D", "AGE"), col("D", "GENDER")], [("D", "SUBJECT_ID", "=", "40310")], []),
    ("admit and discharge times for derek kern", [col("D", "ADMITTIME"), col("D", "DISCHTIME")],
     [("D", "NAME", "=", "Derek Kern")], []),
    ("los for pt 10126?", [col("D", "DAYS_STAY")], [("D", "SUBJECT_ID", "=", "10126")], []),
    ("where did anna morris go when she was discharged", [col("D", "DISCHARGE_LOCATION")],
     [("D", "NAME", "=", "Anna Morris")], ["verb"]),
    ("where was pt 43798 admitted from", [col("D", "ADMISSION_LOCATION")], [("D", "SUBJECT_ID", "=", "43798")],
     ["verb"]),
    ("marital status and religion for pt 10088", [col("D", "MARITAL_STATUS"), col("D", "RELIGION")],
     [("D", "SUBJECT_ID", "=", "10088")], []),
    ("what language does patient 41795 speak", [col("D", "LANGUAGE")], [("D", "SUBJECT_ID", "=", "41795")], []),
    ("what was luis edemann admitted for each time?", [col("D", "DIAGNOSIS")], [("D", "NAME", "=", "Luis Edemann")],
     ["verb"]),
    ("ethnicity of pt 42346", [col("D", "ETHNICITY")], [("D", "SUBJECT_ID", "=", "42346")], []),
    ("pull up the admission type for pt 44083", [col("D", "ADMISSION_TYPE")], [("D", "SUBJECT_ID", "=", "44083")], []),
    ("did jewel kezar pass away? show her death flag", [col("D", "EXPIRE_FLAG")], [("D", "NAME", "=", "Jewel Kezar")],
     ["verb"]),
    ("birth year and year of death for pt 40655", [col("D", "DOB_YEAR"), col("D", "DOD_YEAR")],
     [("D", "SUBJECT_ID", "=", "40655")], []),
    ("what's the name of patient 42458", [col("D", "NAME")], [("D", "SUBJECT_ID", "=", "42458")], []),
    ("how old is carmen dennison", [col("D", "AGE")], [("D", "NAME", "=", "Carmen Dennison")], []),
    ("when was harry stassinos admitted", [col("D", "ADMITTIME")], [("D", "NAME", "=", "Harry Stassinos")], ["verb"]),
    ("give me the insurance and discharge disposition for pt 10124",
     [col("D", "INSURANCE"), col("D", "DISCHARGE_LOCATION")], [("D", "SUBJECT_ID", "=", "10124")], []),
    ("what is the subject id of bruno struebing", [col("D", "SUBJECT_ID")],
     [("D", "NAME", "=", "Bruno Struebing")], []),
    ("date of death and discharge time for pt 10027", [col("D", "DOD"), col("D", "DISCHTIME")],
     [("D", "SUBJECT_ID", "=", "10027")], []),
    ("how long did mary bryant stay, and what was her admitting dx", [col("D", "DAYS_STAY"), col("D", "DIAGNOSIS")],
     [("D", "NAME", "=", "Mary Bryant")], ["verb"]),
    ("when was pt 43881 discharged", [col("D", "DISCHTIME")], [("D", "SUBJECT_ID", "=", "43881")], ["verb"]),

    # ---------------------------------------------------------------- DIAGNOSES
    ("how many pts have afib", [CD], [("DX", "SHORT_TITLE", "=", "Atrial fibrillation")], []),
    ("number of pts with htn nos", [CD], [("DX", "SHORT_TITLE", "=", "Hypertension NOS")], []),
    ("how many pts have high blood pressure (essential htn, unspecified)", [CD],
     [("DX", "LONG_TITLE", "=", "Unspecified essential hypertension")], ["lay"]),
    ("how many patients had a uti, site not specified?", [CD],
     [("DX", "LONG_TITLE", "=", "Urinary tract infection, site not specified")], []),
    ("how many copd pts (chronic airway obstruction) are over 70", [CD],
     [("DX", "SHORT_TITLE", "=", "Chr airway obstruct NEC"), ("D", "AGE", ">", "70")], []),
    ("how many pts are coded for long-term insulin use", [CD], [("DX", "SHORT_TITLE", "=", "Long-term use of insulin")],
     ["verb"]),
    ("how many pts have had a heart attack in the past (old mi)", [CD],
     [("DX", "SHORT_TITLE", "=", "Old myocardial infarct")], ["lay"]),
    ("how many pts had low sodium - hyponatremia", [CD],
     [("DX", "LONG_TITLE", "=", "Hyposmolality and/or hyponatremia")], ["lay"]),
    ("how many pts got c diff", [CD], [("DX", "SHORT_TITLE", "=", "Int inf clstrdium dfcile")], ["lay", "verb"]),
    ("how many women have a history of breast cancer", [CD],
     [("D", "GENDER", "=", "F"), ("DX", "SHORT_TITLE", "=", "Hx of breast malignancy")], ["lay"]),
    ("how many pts with acute kidney failure, unspecified, came in through the ER", [CD],
     [("D", "ADMISSION_LOCATION", "=", "EMERGENCY ROOM ADMIT"), ("DX", "SHORT_TITLE", "=", "Acute kidney failure NOS")],
     ["lay", "verb"]),
    ("septic shock pts who died - how many?", [CD],
     [("D", "EXPIRE_FLAG", "=", "1"), ("DX", "SHORT_TITLE", "=", "Septic shock")], ["verb"]),
    ("how many patients have parkinson's disease", [CD], [("DX", "SHORT_TITLE", "=", "Paralysis agitans")], ["lay"]),
    ("count pts with aspiration pneumonia", [CD], [("DX", "SHORT_TITLE", "=", "Food/vomit pneumonitis")], ["lay"]),
    ("how many pts have esrd", [CD], [("DX", "SHORT_TITLE", "=", "End stage renal disease")], []),
    ("how many pts have end-stage kidney failure", [CD], [("DX", "LONG_TITLE", "=", "End stage renal disease")],
     ["lay"]),
    ("how many pts have gerd (esophageal reflux)", [CD], [("DX", "SHORT_TITLE", "=", "Esophageal reflux")], []),
    ("how many pts have acid reflux", [CD], [("DX", "LONG_TITLE", "=", "Esophageal reflux")], ["lay"]),
    ("number of pts with osa (obstructive sleep apnea)", [CD], [("DX", "SHORT_TITLE", "=", "Obstructive sleep apnea")],
     []),
    ("how many have a bedsore on the buttock", [CD], [("DX", "SHORT_TITLE", "=", "Pressure ulcer, buttock")], ["lay"]),
    ("how many pts have an underactive thyroid (hypothyroidism nos)", [CD],
     [("DX", "SHORT_TITLE", "=", "Hypothyroidism NOS")], ["lay"]),
    ("how many are ex-smokers (history of tobacco use)?", [CD], [("DX", "SHORT_TITLE", "=", "History of tobacco use")],
     ["lay"]),
    ("how many pts had mrsa septicemia", [CD], [("DX", "SHORT_TITLE", "=", "MRSA septicemia")], []),
    ("how many have type 2 dm without complications, not stated as uncontrolled", [CD],
     [("DX", "SHORT_TITLE", "=", "DMII wo cmp nt st uncntr")], []),
    ("how many pts carry a dx of long-term blood thinner use", [CD],
     [("DX", "SHORT_TITLE", "=", "Long-term use anticoagul")], ["lay", "verb"]),
    ("count pts coded 5849", [CD], [("DX", "ICD9_CODE", "=", "5849")], ["verb"]),
    ("how many medicare pts carry dx code 42731", [CD],
     [("D", "INSURANCE", "=", "Medicare"), ("DX", "ICD9_CODE", "=", "42731")], ["verb"]),
    ("icd9 4019 in pts under 60 - how many", [CD], [("DX", "ICD9_CODE", "=", "4019"), ("D", "AGE", "<", "60")], []),
    ("how many pts over 80 have alzheimer's", [CD],
     [("DX", "LONG_TITLE", "=", "Alzheimer's disease"), ("D", "AGE", ">", "80")], []),
    ("how many men older than 70 have afib?", [CD],
     [("D", "GENDER", "=", "M"), ("DX", "SHORT_TITLE", "=", "Atrial fibrillation"), ("D", "AGE", ">", "70")], []),
    ("female pts with chf nos admitted through the ED, how many", [CD],
     [("D", "GENDER", "=", "F"), ("D", "ADMISSION_LOCATION", "=", "EMERGENCY ROOM ADMIT"),
      ("DX", "SHORT_TITLE", "=", "CHF NOS")], ["verb"]),
    ("how many pts have anemia of chronic kidney disease", [CD],
     [("DX", "SHORT_TITLE", "=", "Anemia in chr kidney dis")], []),
    ("how many pts had a nstemi, initial episode (subendocardial infarct)", [CD],
     [("DX", "SHORT_TITLE", "=", "Subendo infarct, initial")], []),
    ("number of pts with acute respiratory failure who stayed over 2 weeks", [CD],
     [("DX", "SHORT_TITLE", "=", "Acute respiratry failure"), ("D", "DAYS_STAY", ">", "14")], ["verb"]),
    ("how many pts were diagnosed with low potassium (hypokalemia)", [CD],
     [("DX", "SHORT_TITLE", "=", "Hypopotassemia")], ["lay", "verb"]),
    ("how many pts with thrush", [CD], [("DX", "SHORT_TITLE", "=", "Thrush")], []),
    ("how many pts have fluid around the lungs (pleural effusion nos)", [CD],
     [("DX", "SHORT_TITLE", "=", "Pleural effusion NOS")], ["lay"]),
    ("how many pts had bacteria in the blood (bacteremia)", [CD], [("DX", "SHORT_TITLE", "=", "Bacteremia")], ["lay"]),
    ("how many pts were vomiting blood (hematemesis)", [CD], [("DX", "SHORT_TITLE", "=", "Hematemesis")], ["lay"]),
    ("how many men have an enlarged prostate without urinary obstruction", [CD],
     [("D", "GENDER", "=", "M"), ("DX", "SHORT_TITLE", "=", "BPH w/o urinary obs/LUTS")], ["lay"]),
    ("how many pts have cirrhosis from drinking (alcoholic cirrhosis)", [CD],
     [("DX", "SHORT_TITLE", "=", "Alcohol cirrhosis liver")], ["lay"]),
    ("how many pts have low platelets, unspecified", [CD], [("DX", "LONG_TITLE", "=", "Thrombocytopenia, unspecified")],
     ["lay"]),
    ("how many delirious pts (delirium d/t other conditions) are 80 or older", [CD],
     [("DX", "SHORT_TITLE", "=", "Delirium d/t other cond"), ("D", "AGE", ">=", "80")], ["lay"]),
    ("how many pts who had a palliative care encounter died in hospital", [CD],
     [("D", "DISCHARGE_LOCATION", "=", "DEAD/EXPIRED"), ("DX", "SHORT_TITLE", "=", "Encountr palliative care")],
     ["verb"]),
    ("list the diagnoses for pt 10019", [col("DX", "SHORT_TITLE")], [("DX", "SUBJECT_ID", "=", "10019")], []),
    ("what are thomas maly's diagnoses, long titles please", [col("DX", "LONG_TITLE")],
     [("D", "NAME", "=", "Thomas Maly")], []),
    ("icd9 codes for pt 10045", [col("DX", "ICD9_CODE")], [("DX", "SUBJECT_ID", "=", "10045")], []),
    ("short and long title for dx code 5990", [col("DX", "SHORT_TITLE"), col("DX", "LONG_TITLE")],
     [("DX", "ICD9_CODE", "=", "5990")], []),
    ("what's the icd9 code for atrial flutter?", [col("DX", "ICD9_CODE")],
     [("DX", "SHORT_TITLE", "=", "Atrial flutter")], []),
    ("admitting dx and coded diagnoses for pt 40503", [col("D", "DIAGNOSIS"), col("DX", "SHORT_TITLE")],
     [("D", "SUBJECT_ID", "=", "40503")], []),
    ("show me jean shani's los and her diagnosis codes", [col("D", "DAYS_STAY"), col("DX", "ICD9_CODE")],
     [("D", "NAME", "=", "Jean Shani")], []),
    ("full name of dx code 41071?", [col("DX", "LONG_TITLE")], [("DX", "ICD9_CODE", "=", "41071")], []),

    # ---------------------------------------------------------------- PROCEDURES
    ("how many pts got prbcs (packed cell transfusion)", [CD], [("PR", "SHORT_TITLE", "=", "Packed cell transfusion")],
     ["verb"]),
    ("how many patients were intubated", [CD], [("PR", "SHORT_TITLE", "=", "Insert endotracheal tube")],
     ["lay", "verb"]),
    ("how many pts were on the vent for 96+ hrs", [CD], [("PR", "SHORT_TITLE", "=", "Cont inv mec ven 96+ hrs")],
     ["lay"]),
    ("how many pts had an art line placed", [CD], [("PR", "SHORT_TITLE", "=", "Arterial catheterization")],
     ["lay", "verb"]),
    ("how many pts got hemodialysis", [CD], [("PR", "SHORT_TITLE", "=", "Hemodialysis")], ["verb"]),
    ("number of pts who had a paracentesis (percutaneous abdominal drainage)", [CD],
     [("PR", "LONG_TITLE", "=", "Percutaneous abdominal drainage")], ["lay"]),
    ("count pts who had a spinal tap", [CD], [("PR", "SHORT_TITLE", "=", "Spinal tap")], []),
    ("how many pts got tube feeds (enteral nutrition infusion)", [CD],
     [("PR", "SHORT_TITLE", "=", "Entral infus nutrit sub")], ["lay", "verb"]),
    ("how many pts received tpn", [CD], [("PR", "SHORT_TITLE", "=", "Parent infus nutrit sub")], ["verb"]),
    ("how many pts had an echo (diagnostic ultrasound of the heart)", [CD],
     [("PR", "SHORT_TITLE", "=", "Dx ultrasound-heart")], []),
    ("how many pts had a peg tube placed", [CD], [("PR", "SHORT_TITLE", "=", "Percu endosc gastrostomy")], ["verb"]),
    ("how many pts had an ivc filter put in", [CD], [("PR", "SHORT_TITLE", "=", "Interruption vena cava")],
     ["lay", "verb"]),
    ("how many patients had a chest tube inserted", [CD], [("PR", "SHORT_TITLE", "=", "Insert intercostal cath")],
     ["lay", "verb"]),
    ("how many pts underwent ercp", [CD],
     [("PR", "LONG_TITLE", "=", "Endoscopic retrograde cholangiopancreatography [ERCP]")], ["verb"]),
    ("how many were put on non-invasive ventilation (bipap)", [CD],
     [("PR", "SHORT_TITLE", "=", "Non-invasive mech vent")], ["verb"]),
    ("how many pts had procedure 3893", [CD], [("PR", "ICD9_CODE", "=", "3893")], []),
    ("pts over 75 with procedure code 9604 - count", [CD], [("PR", "ICD9_CODE", "=", "9604"), ("D", "AGE", ">", "75")],
     []),
    ("how many women had a thoracentesis", [CD],
     [("D", "GENDER", "=", "F"), ("PR", "SHORT_TITLE", "=", "Thoracentesis")], []),
    ("how many emergency admits needed pressors (vasopressor infusion)", [CD],
     [("D", "ADMISSION_TYPE", "=", "EMERGENCY"), ("PR", "SHORT_TITLE", "=", "Infusion of vasopressor")],
     ["lay", "verb"]),
    ("how many pts were shocked (heart countershock)", [CD], [("PR", "SHORT_TITLE", "=", "Heart countershock NEC")],
     ["lay", "verb"]),
    ("how many male pts under 60 got intubated", [CD],
     [("D", "GENDER", "=", "M"), ("PR", "SHORT_TITLE", "=", "Insert endotracheal tube"), ("D", "AGE", "<", "60")],
     ["lay", "verb"]),
    ("how many pts had a temporary trach", [CD], [("PR", "SHORT_TITLE", "=", "Temporary tracheostomy")], []),
    ("how many pts had a left and right heart cath", [CD],
     [("PR", "LONG_TITLE", "=", "Combined right and left heart cardiac catheterization")], []),
    ("how many pts on medicare got a platelet transfusion", [CD],
     [("D", "INSURANCE", "=", "Medicare"), ("PR", "SHORT_TITLE", "=", "Platelet transfusion")], ["verb"]),
    ("how many pts 70 or older got a peg", [CD],
     [("PR", "SHORT_TITLE", "=", "Percu endosc gastrostomy"), ("D", "AGE", ">=", "70")], ["verb"]),
    ("what procedures did pt 10027 have", [col("PR", "SHORT_TITLE")], [("PR", "SUBJECT_ID", "=", "10027")], []),
    ("list procedure codes for kenneth chase", [col("PR", "ICD9_CODE")], [("D", "NAME", "=", "Kenneth Chase")], []),
    ("what is procedure 9672? short and long title", [col("PR", "SHORT_TITLE"), col("PR", "LONG_TITLE")],
     [("PR", "ICD9_CODE", "=", "9672")], []),
    ("procedure code for a temporary tracheostomy?", [col("PR", "ICD9_CODE")],
     [("PR", "SHORT_TITLE", "=", "Temporary tracheostomy")], []),
    ("diagnoses and procedures for pt 10090 (short titles)", [col("DX", "SHORT_TITLE"), col("PR", "SHORT_TITLE")],
     [("DX", "SUBJECT_ID", "=", "10090")], []),
    ("admit dx and procedures done for robert pearson", [col("D", "DIAGNOSIS"), col("PR", "LONG_TITLE")],
     [("D", "NAME", "=", "Robert Pearson")], []),
    ("what procedures were done on pt 43879, full titles", [col("PR", "LONG_TITLE")],
     [("PR", "SUBJECT_ID", "=", "43879")], []),

    # ---------------------------------------------------------------- PRESCRIPTIONS
    ("how many pts got lasix iv", [CD], [("RX", "DRUG", "=", "Furosemide"), ("RX", "ROUTE", "=", "IV")],
     ["lay", "verb"]),
    ("how many pts got their water pill (lasix) po", [CD],
     [("RX", "DRUG", "=", "Furosemide"), ("RX", "ROUTE", "=", "PO")], ["lay", "verb"]),
    ("how many patients were on coumadin", [CD], [("RX", "DRUG", "=", "Warfarin")], ["lay", "verb"]),
    ("how many pts received levophed", [CD], [("RX", "DRUG", "=", "Norepinephrine")], ["lay", "verb"]),
    ("how many pts got ativan iv", [CD], [("RX", "DRUG", "=", "Lorazepam"), ("RX", "ROUTE", "=", "IV")],
     ["lay", "verb"]),
    ("number of pts given lovenox", [CD], [("RX", "DRUG", "=", "Enoxaparin Sodium")], ["lay", "verb"]),
    ("how many pts were on heparin subq", [CD], [("RX", "DRUG", "=", "Heparin"), ("RX", "ROUTE", "=", "SC")], ["verb"]),
    ("how many pts got ambien for sleep", [CD], [("RX", "DRUG", "=", "Zolpidem Tartrate")], ["lay", "verb"]),
    ("how many pts over 80 got haldol", [CD], [("RX", "DRUG", "=", "Haloperidol"), ("D", "AGE", ">", "80")],
     ["lay", "verb"]),
    ("count pts on lipitor", [CD], [("RX", "DRUG", "=", "Atorvastatin")], ["lay", "verb"]),
    ("how many got a flu shot", [CD], [("RX", "DRUG", "=", "Influenza Virus Vaccine")], ["lay", "verb"]),
    ("how many pts above 85 were given the pneumonia vaccine (pneumovax)", [CD],
     [("RX", "DRUG", "=", "Pneumococcal Vac Polyvalent"), ("D", "AGE", ">", "85")], ["lay", "verb"]),
    ("how many pts received kayexalate", [CD], [("RX", "DRUG", "=", "Sodium Polystyrene Sulfonate")],
     ["lay", "verb"]),
    ("how many pts were given vitamin k (phytonadione)", [CD], [("RX", "DRUG", "=", "Phytonadione")],
     ["lay", "verb"]),
    ("how many women were on lisinopril", [CD], [("D", "GENDER", "=", "F"), ("RX", "DRUG", "=", "Lisinopril")],
     ["verb"]),
    ("how many pts had any additive-type meds", [CD], [("RX", "DRUG_TYPE", "=", "ADDITIVE")], []),
    ("how many pts had a base-type drug order", [CD], [("RX", "DRUG_TYPE", "=", "BASE")], []),
    ("how many pts got something sublingual", [CD], [("RX", "ROUTE", "=", "SL")], ["lay", "verb"]),
    ("how many pts got meds via ng tube", [CD], [("RX", "ROUTE", "=", "NG")], ["verb"]),
    ("how many pts had a pca (iv pca route)", [CD], [("RX", "ROUTE", "=", "IVPCA")], []),
    ("count pts who got anything pr", [CD], [("RX", "ROUTE", "=", "PR")], ["verb"]),
    ("how many pts got an im injection", [CD], [("RX", "ROUTE", "=", "IM")], ["lay", "verb"]),
    ("how many pts were on an iv drip", [CD], [("RX", "ROUTE", "=", "IV DRIP")], ["verb"]),
    ("how many pts had inhaled meds (ih route)", [CD], [("RX", "ROUTE", "=", "IH")], []),
    ("how many pts got formulary code FURO40I", [CD], [("RX", "FORMULARY_DRUG_CD", "=", "FURO40I")], ["verb"]),
    ("pts over 85 with drug code HEPA5I, how many", [CD],
     [("RX", "FORMULARY_DRUG_CD", "=", "HEPA5I"), ("D", "AGE", ">", "85")], []),
    ("how many pts got pantoprazole 40mg", [CD],
     [("RX", "DRUG", "=", "Pantoprazole"), ("RX", "DRUG_DOSE", "=", "40mg")], ["verb"]),
    ("how many medicaid pts were given zofran", [CD],
     [("D", "INSURANCE", "=", "Medicaid"), ("RX", "DRUG", "=", "Ondansetron")], ["lay", "verb"]),
    ("how many pts on vasopressin stayed more than 10 days", [CD],
     [("RX", "DRUG", "=", "Vasopressin"), ("D", "DAYS_STAY", ">", "10")], ["verb"]),
    ("how many emergency pts got epo (epoetin alfa) subq", [CD],
     [("D", "ADMISSION_TYPE", "=", "EMERGENCY"), ("RX", "DRUG", "=", "Epoetin Alfa"), ("RX", "ROUTE", "=", "SC")],
     ["verb"]),
    ("how many pts had an amp of d50 (dextrose 50%)", [CD], [("RX", "DRUG", "=", "Dextrose 50%")], ["lay"]),
    ("how many pts were on a fentanyl patch", [CD], [("RX", "DRUG", "=", "Fentanyl Patch")], ["verb"]),
    ("list meds for pt 10019", [col("RX", "DRUG")], [("RX", "SUBJECT_ID", "=", "10019")], []),
    ("drugs and doses for mary bryant", [col("RX", "DRUG"), col("RX", "DRUG_DOSE")],
     [("D", "NAME", "=", "Mary Bryant")], []),
    ("what route is norepinephrine given by", [col("RX", "ROUTE")], [("RX", "DRUG", "=", "Norepinephrine")], ["verb"]),
    ("formulary code for lovenox?", [col("RX", "FORMULARY_DRUG_CD")], [("RX", "DRUG", "=", "Enoxaparin Sodium")],
     ["lay"]),
    ("drug type and route for diprivan (propofol)", [col("RX", "DRUG_TYPE"), col("RX", "ROUTE")],
     [("RX", "DRUG", "=", "Propofol")], ["lay"]),
    ("what warfarin doses did pt 10124 get", [col("RX", "DRUG_DOSE")],
     [("RX", "SUBJECT_ID", "=", "10124"), ("RX", "DRUG", "=", "Warfarin")], ["verb"]),
    ("icu stay id for pt 10040", [col("RX", "ICUSTAY_ID")], [("RX", "SUBJECT_ID", "=", "10040")], []),
    ("which drug is formulary code ASA81", [col("RX", "DRUG")], [("RX", "FORMULARY_DRUG_CD", "=", "ASA81")], []),
    ("what po meds did lena quillen get", [col("RX", "DRUG")],
     [("D", "NAME", "=", "Lena Quillen"), ("RX", "ROUTE", "=", "PO")], ["verb"]),
    ("show the drug codes and routes for pt 10098", [col("RX", "FORMULARY_DRUG_CD"), col("RX", "ROUTE")],
     [("RX", "SUBJECT_ID", "=", "10098")], []),
    ("what's the drug type of the kcl (potassium chloride) orders", [col("RX", "DRUG_TYPE")],
     [("RX", "DRUG", "=", "Potassium Chloride")], []),
    ("what doses of digoxin were ordered", [col("RX", "DRUG_DOSE")], [("RX", "DRUG", "=", "Digoxin")], ["verb"]),
    ("what drugs was pt 10090 given iv", [col("RX", "DRUG")],
     [("RX", "SUBJECT_ID", "=", "10090"), ("RX", "ROUTE", "=", "IV")], ["verb"]),
    ("give me the icu stay ids and drug types for wesley bachtold", [col("RX", "ICUSTAY_ID"), col("RX", "DRUG_TYPE")],
     [("D", "NAME", "=", "Wesley Bachtold")], []),

    # ---------------------------------------------------------------- LAB
    ("how many pts over 85 had an abnormal lab", [CD], [("L", "FLAG", "=", "abnormal"), ("D", "AGE", ">", "85")], []),
    ("how many pts had a lab result flagged delta", [CD], [("L", "FLAG", "=", "delta")], []),
    ("how many pts had an a1c drawn", [CD], [("L", "LABEL", "=", "% Hemoglobin A1c")], ["verb"]),
    ("how many pts got an nt-probnp", [CD], [("L", "LABEL", "=", "NTproBNP")], ["verb"]),
    ("how many pts had a tsh checked", [CD], [("L", "LABEL", "=", "Thyroid Stimulating Hormone")], ["verb"]),
    ("how many pts had an abnormal troponin T", [CD],
     [("L", "FLAG", "=", "abnormal"), ("L", "LABEL", "=", "Troponin T")], []),
    ("count pts with a lactate sent", [CD], [("L", "LABEL", "=", "Lactate")], ["verb"]),
    ("how many patients had a d-dimer sent (clot test)", [CD], [("L", "LABEL", "=", "D-Dimer")], ["lay", "verb"]),
    ("how many pts had an ammonia level", [CD], [("L", "LABEL", "=", "Ammonia")], []),
    ("how many pts had a tylenol level drawn", [CD], [("L", "LABEL", "=", "Acetaminophen")], ["lay", "verb"]),
    ("how many had a blood alcohol level", [CD], [("L", "LABEL", "=", "Ethanol")], ["lay"]),
    ("how many pts had a vanc level checked", [CD], [("L", "LABEL", "=", "Vancomycin")], ["lay", "verb"]),
    ("how many pts had an abnormal bun", [CD], [("L", "FLAG", "=", "abnormal"), ("L", "LABEL", "=", "Urea Nitrogen")],
     []),
    ("how many pts had their sugar checked (glucose)", [CD], [("L", "LABEL", "=", "Glucose")], ["lay", "verb"]),
    ("how many pts had csf sent to the lab", [CD], [("L", "FLUID", "=", "Cerebrospinal Fluid (CSF)")], ["verb"]),
    ("how many pts had pleural fluid studies", [CD], [("L", "FLUID", "=", "Pleural")], []),
    ("number of pts with ascitic fluid labs", [CD], [("L", "FLUID", "=", "Ascites")], []),
    ("how many female pts had blood gas labs", [CD],
     [("D", "GENDER", "=", "F"), ("L", "CATEGORY", "=", "Blood Gas")], []),
    ("how many pts had lab itemid 50813", [CD], [("L", "ITEMID", "=", "50813")], []),
    ("how many pts under 50 had itemid 51003", [CD], [("L", "ITEMID", "=", "51003"), ("D", "AGE", "<", "50")], []),
    ("how many elective pts had a hemoglobin flagged abnormal", [CD],
     [("D", "ADMISSION_TYPE", "=", "ELECTIVE"), ("L", "FLAG", "=", "abnormal"), ("L", "LABEL", "=", "Hemoglobin")],
     []),
    ("how many pts with a dig level were on digoxin", [CD],
     [("RX", "DRUG", "=", "Digoxin"), ("L", "LABEL", "=", "Digoxin")], ["lay", "verb"]),
    ("count pts on medicaid who had any urine labs", [CD],
     [("D", "INSURANCE", "=", "Medicaid"), ("L", "FLUID", "=", "Urine")], []),
    ("how many pts had a hematology lab flagged delta", [CD],
     [("L", "FLAG", "=", "delta"), ("L", "CATEGORY", "=", "Hematology")], []),
    ("what labs were drawn on pt 10046", [col("L", "LABEL")], [("L", "SUBJECT_ID", "=", "10046")], ["verb"]),
    ("what lab category is the lipase (pancreas enzyme) test in", [col("L", "CATEGORY")],
     [("L", "LABEL", "=", "Lipase")], ["lay"]),
    ("itemid for lipase?", [col("L", "ITEMID")], [("L", "LABEL", "=", "Lipase")], []),
    ("what fluid is lab item 51082", [col("L", "FLUID")], [("L", "ITEMID", "=", "51082")], []),
    ("glucose values for pt 10019", [col("L", "VALUE_UNIT")],
     [("L", "SUBJECT_ID", "=", "10019"), ("L", "LABEL", "=", "Glucose")], []),
    ("when were mary bryant's labs drawn", [col("L", "CHARTTIME")], [("D", "NAME", "=", "Mary Bryant")], ["verb"]),
    ("show the values and names of abnormal labs for pt 10067", [col("L", "VALUE_UNIT"), col("L", "LABEL")],
     [("L", "SUBJECT_ID", "=", "10067"), ("L", "FLAG", "=", "abnormal")], []),
    ("item ids and flags for penney welch's labs", [col("L", "ITEMID"), col("L", "FLAG")],
     [("D", "NAME", "=", "Penney Welch")], []),
    ("what was the admitting dx and the lab fluids for pt 10090", [col("D", "DIAGNOSIS"), col("L", "FLUID")],
     [("D", "SUBJECT_ID", "=", "10090")], []),
    ("what lab categories does paula thomas have", [col("L", "CATEGORY")], [("D", "NAME", "=", "Paula Thomas")], []),
    ("what were pt 10098's potassium results", [col("L", "VALUE_UNIT")],
     [("L", "SUBJECT_ID", "=", "10098"), ("L", "LABEL", "=", "Potassium")], []),
    ("when was the troponin T drawn on pt 42075", [col("L", "CHARTTIME")],
     [("L", "SUBJECT_ID", "=", "42075"), ("L", "LABEL", "=", "Troponin T")], ["verb"]),

    # ---------------------------------------------------------------- several event tables
    ("how many afib pts were on coumadin", [CD],
     [("DX", "SHORT_TITLE", "=", "Atrial fibrillation"), ("RX", "DRUG", "=", "Warfarin")], ["lay", "verb"]),
    ("how many chf nos pts got iv lasix", [CD],
     [("DX", "SHORT_TITLE", "=", "CHF NOS"), ("RX", "DRUG", "=", "Furosemide"), ("RX", "ROUTE", "=", "IV")],
     ["lay", "verb"]),
    ("how many uncomplicated type 2 diabetics had an a1c", [CD],
     [("DX", "SHORT_TITLE", "=", "DMII wo cmp nt st uncntr"), ("L", "LABEL", "=", "% Hemoglobin A1c")], []),
    ("how many pts with acute kidney failure nos had an abnormal creatinine", [CD],
     [("DX", "SHORT_TITLE", "=", "Acute kidney failure NOS"), ("L", "FLAG", "=", "abnormal"),
      ("L", "LABEL", "=", "Creatinine")], []),
    ("how many pts who got hemodialysis were given epo", [CD],
     [("PR", "SHORT_TITLE", "=", "Hemodialysis"), ("RX", "DRUG", "=", "Epoetin Alfa")], ["verb"]),
    ("how many pts who had a spinal tap had a csf glucose", [CD],
     [("PR", "SHORT_TITLE", "=", "Spinal tap"), ("L", "LABEL", "=", "Glucose, CSF")], []),
    ("how many septic shock pts were intubated", [CD],
     [("DX", "SHORT_TITLE", "=", "Septic shock"), ("PR", "SHORT_TITLE", "=", "Insert endotracheal tube")],
     ["lay", "verb"]),
    ("how many pts on the vent 96+ hrs got propofol", [CD],
     [("PR", "SHORT_TITLE", "=", "Cont inv mec ven 96+ hrs"), ("RX", "DRUG", "=", "Propofol")], ["lay", "verb"]),
    ("how many pts with an abnormal potassium got potassium chloride", [CD],
     [("RX", "DRUG", "=", "Potassium Chloride"), ("L", "FLAG", "=", "abnormal"), ("L", "LABEL", "=", "Potassium")],
     ["verb"]),
    ("how many pts with hyperkalemia (high potassium) got kayexalate", [CD],
     [("DX", "SHORT_TITLE", "=", "Hyperpotassemia"), ("RX", "DRUG", "=", "Sodium Polystyrene Sulfonate")],
     ["lay", "verb"]),
    ("how many pts with hepatic encephalopathy had an ammonia drawn", [CD],
     [("DX", "SHORT_TITLE", "=", "Hepatic encephalopathy"), ("L", "LABEL", "=", "Ammonia")], ["verb"]),
    ("how many pts with septicemia nos got vanc (vancomycin hcl)", [CD],
     [("DX", "SHORT_TITLE", "=", "Septicemia NOS"), ("RX", "DRUG", "=", "Vancomycin HCl")], ["verb"]),
    ("how many pts who had a thoracentesis had pleural fluid sent", [CD],
     [("PR", "SHORT_TITLE", "=", "Thoracentesis"), ("L", "FLUID", "=", "Pleural")], ["verb"]),
    ("how many pts with chest pain as admitting dx had an abnormal troponin T", [CD],
     [("D", "DIAGNOSIS", "=", "CHEST PAIN"), ("L", "FLAG", "=", "abnormal"), ("L", "LABEL", "=", "Troponin T")], []),
    ("how many intubated pts got propofol iv drip", [CD],
     [("PR", "SHORT_TITLE", "=", "Insert endotracheal tube"), ("RX", "DRUG", "=", "Propofol"),
      ("RX", "ROUTE", "=", "IV DRIP")], ["lay", "verb"]),

    # ---------------------------------------------------------------- aggregates over a joined event
    ("oldest pt with afib?", [agg("max", "D", "AGE")], [("DX", "SHORT_TITLE", "=", "Atrial fibrillation")], []),
    ("youngest pt who got intubated - age?", [agg("min", "D", "AGE")],
     [("PR", "SHORT_TITLE", "=", "Insert endotracheal tube")], ["lay", "verb"]),
    ("longest los among pts on tpn", [agg("max", "D", "DAYS_STAY")],
     [("PR", "SHORT_TITLE", "=", "Parent infus nutrit sub")], []),
    ("youngest pt who was given warfarin", [agg("min", "D", "AGE")], [("RX", "DRUG", "=", "Warfarin")], ["verb"]),
    ("max age of pts with a troponin T drawn", [agg("max", "D", "AGE")], [("L", "LABEL", "=", "Troponin T")],
     ["verb"]),
    ("shortest stay for a pt with septic shock", [agg("min", "D", "DAYS_STAY")],
     [("DX", "SHORT_TITLE", "=", "Septic shock")], []),
]


def build() -> list[dict]:
    records = []
    for i, (question, select, conds, tags) in enumerate(SPECS, 1):
        items = [(a, T[t], c) for a, t, c in select]
        conditions = [Condition(T[t], c, op, v) for t, c, op, v in conds]
        query = Query(sorted(items, key=select_order), sorted(conditions, key=condition_order))
        phen = [TAGS[x] for x in tags]
        if ABBREVIATION_RE.search(question):
            phen.append("abbreviation")
        if question.split()[0].lower() in IMPERATIVE_VERBS:
            phen.append("imperative")
        if len(conditions) >= 2:
            phen.append("multi_condition")
        if any(c.op != "=" for c in conditions):
            phen.append("comparison")
        if any(a in ("max", "min", "avg") for a, _, _ in items):
            phen.append("aggregation")
        if any(c.column in ("SUBJECT_ID", "NAME") for c in conditions):
            phen.append("specific_patient")
        if any(c in CODE_COLUMNS for _, _, c in items) or any(c.column in CODE_COLUMNS for c in conditions):
            phen.append("code")
        order = list(TAGS.values())
        phen = sorted(set(phen), key=order.index)
        records.append({"key": f"clin-{i:03d}", "variant": "clinician", "source": "clinician", "question": question,
                        "sql": render_sql(query), "phenomena": phen})
    return records


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python evalsets/build_clinician.py",
                                     description=f"Write {OUT.relative_to(ROOT)} from the hand-written specs in "
                                                 "this file (then check it with evalsets/check_clinician.py).")
    parser.add_argument("--show", action="store_true", help="also print each question's result on the demo db")
    args = parser.parse_args(argv)
    records = build()
    with OUT.open("w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} questions to {OUT.relative_to(ROOT)}")
    if args.show:
        from medsql.executor import execute
        for r in records:
            res = execute(ROOT / "data" / "mimicsql.db", r["sql"], timeout_s=5)
            rows = res.rows if res.ok else res.error
            print(f'{r["key"]} {r["question"]}\n    {r["sql"]}\n    -> {res.row_count} rows: {str(rows)[:160]}')


if __name__ == "__main__":
    main()
